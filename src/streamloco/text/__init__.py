"""Text shared by the tokenizer and the data pipeline: documents, normalization, mixture weights.

A base layer: it imports no other streamloco package, so tokenizer/ and data_pipeline/ can both
use it without importing each other.
"""
