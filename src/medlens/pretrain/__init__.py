"""Self-supervised pretraining of encoders on unlabelled medical images (``medlens pretrain``)."""
