"""The library the stages share: the stage contract, artifacts and their manifests, the catalog of
artifact files, the training loop, networks, pretraining objectives, SSL methods, pseudo-labels,
losses and figures. It never imports a stage module."""
