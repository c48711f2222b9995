"""The operator: kopf handlers (handlers.py) over one reconcile pass (reconcile.py) over pure builders,
observers, a planner and one status function. Only handlers.py and commands.py import kopf; only kube.py
talks to the API server."""
