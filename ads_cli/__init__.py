"""ads: Active Data Search on a CPU laptop."""

__version__ = "0.1.0"


def __getattr__(name):
    # imported lazily so that `ads --help` does not pay for the pipeline's imports
    if name == "Pipeline":
        from .pipeline import Pipeline

        return Pipeline
    raise AttributeError(name)
