"""One-off measurements, each a `python -m bench STUDY` (= `python -m bench.studies.STUDY`)."""
