"""The siamese model: gate, branch fusion, decoding, saving and loading, base-model loading."""
