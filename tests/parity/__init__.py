"""Parity of llama3_np with the PyTorch implementations: see conftest.py and PARITY.md."""
