"""A trained model: the network, its run folder, ensembles of runs, and inference.

- :mod:`heartcli.model.network`: the configurable 1D CNN (``build_model``) and the rhythm input
- :mod:`heartcli.model.runs`: the run folder's layout, names, claiming, manifests, checkpoints
- :mod:`heartcli.model.load`: ``load_run``: a run's model, or an ensemble's members as one
- :mod:`heartcli.model.ensemble`: several runs as one model (their mean probability)
- :mod:`heartcli.model.inference`: batched inference in PyTorch and ONNX Runtime

Kept free of imports here: ``heart predict model.onnx`` loads inference without torch.
"""
