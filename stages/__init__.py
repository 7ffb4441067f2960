"""Pipeline stages: one module per stage, each with its config class, a pure ``run(config, inputs,
output)`` and ``STAGE``, runnable as ``python -m stages.<name>``. What they share is the library
``stages.lib``; a stage imports it, never another stage.

Nothing here imports Prefect or ``pipelines``: a stage runs alone in a process or a container.
"""

__version__ = "0.1.0"
