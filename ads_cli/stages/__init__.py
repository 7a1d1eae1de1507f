"""One module per `ads` command, each with `run(params, paths, ...) -> manifest`.

`train` is the only stage that calls other stages (sample and execute, once per iteration)."""
