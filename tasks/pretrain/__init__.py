"""Step *pretrain*: the tiny encoders pretrained on a SynthAVS set of their own (flows/pretrain.py)."""
