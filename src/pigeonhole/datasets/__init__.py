"""Datasets: ingest, validate, store and manage labelled images."""
