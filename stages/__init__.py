"""Pipeline stages: each module holds a pure ``run(config, inputs, output)`` and a thin CLI.

Nothing here imports Prefect or ``pipelines``: a stage runs alone in a process or a container.
"""

__version__ = "0.1.0"
