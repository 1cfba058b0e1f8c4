"""The siamese model: the branches and their router, the gate and fusion, decoding, saving and
loading, base-model loading."""
