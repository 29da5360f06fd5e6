"""Distributed mode: the stages as Celery tasks on per-stage queues over Redis (DESIGN.md "Modes")."""
