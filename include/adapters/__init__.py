"""The few pieces that must touch Airflow, shared by the DAG file and the compliance page plugin.

Stage code (``include/<stage>/``, ``include/orchestration/``) never imports Airflow; these modules
turn Airflow's connections, task context and operators into the plain values the stages take.
Airflow is imported inside functions, so importing this package while a DAG file is parsed costs
nothing.

* :mod:`include.adapters.connections`: object storage, the signing key, the provenance salt, the
  trusted keyring, the cost store and the deployment mode, from Airflow connections (any secrets
  backend) or the environment.
* :mod:`include.adapters.tasks`: the task context (who triggered the run, where its logs are) and
  the mapping of a refused stage to a task failure without retries.
* :mod:`include.adapters.kubernetes`: the explainer's KubernetesPodOperator subclass and the
  callback that saves each finished pod for the cost stage.
"""
