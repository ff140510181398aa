"""Glue between the DAG's thin tasks and the stage packages (no Airflow import)."""
