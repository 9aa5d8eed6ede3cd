"""Jobs: rows that describe work for the compute cluster. Other domains start work with
``pigeonhole.jobs.service.create_job``; the dispatcher (``pigeonhole.compute``) runs it."""
