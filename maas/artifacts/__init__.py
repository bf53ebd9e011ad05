"""Model artefacts: the one place that turns a registry version's files into something callable,
and the checks made before anything in those files is deserialised.

signing.py       Ed25519 signatures over a version's identity and content hash (publish signs,
                 serving verifies before it reads a model file)
keras_safety.py  an allow-list check of a ``.keras`` archive's ``config.json`` (Keras safe mode
                 is not a boundary in tf_keras 2.21: see docs/serving-on-ray.md)
keras_loader.py  verified bytes -> a private temporary file -> ``load_model`` -> deleted
"""
