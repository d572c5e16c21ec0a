"""The annotation wing: the SQLite store with import/export (`store`), inter-annotator agreement (`agreement`),
batch jobs walked as a queue (`batch`), Hub dataset sync (`sync`), the plain functions behind the annotation UI and
the `/annotate` and `/export` endpoints (`api`), and the UI itself (`tabs`: the panel under every result, the
Annotations and Batch tabs)."""
