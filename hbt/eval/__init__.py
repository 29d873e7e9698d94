"""Distributed retrieval evaluation: encode shards, FAISS search, exact ranks, metrics,
language bias, reports. Reads top to bottom: encode -> search -> metrics -> bias -> run -> report."""
