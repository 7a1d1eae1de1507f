"""The ADS method as plain functions: tasks, search, optimizer, policy, calls, reward, metrics, stats.

Nothing here imports a stage; everything here can be called from a test or a notebook."""
