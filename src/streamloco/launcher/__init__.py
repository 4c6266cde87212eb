"""The Ray side of a run: start or connect to Ray, worker groups, the Ray transport, jobs."""
