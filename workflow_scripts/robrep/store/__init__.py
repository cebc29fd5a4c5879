"""Activation stores: extraction of a model's layers into chunked Zarr stores (Gram statistics and
raw features), and the read API comparisons use."""
