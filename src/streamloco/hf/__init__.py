"""The Hugging Face Llama layout: export a streamloco model to it, import one from it, sample.

layout.py (names, shapes, config.json), tokenizer_files.py (the SentencePiece model as files
transformers reads), export.py (write and read a model directory atomically), init.py
(`model.init_from`, checked against the run's config), generate.py (sampling), embeddings.py
(new vocabulary rows for an extended tokenizer, and held-out loss / bits per byte). Nothing
here needs transformers: the files are written and read with safetensors and json.
"""
