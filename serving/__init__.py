"""The zoo's inference service on Ray Serve (see docs/serving.md).

- :mod:`serving.config`: typed settings from app args and the environment;
- :mod:`serving.inference`: safe image decoding, the classifier and the alias-following holder (no Ray);
- :mod:`serving.api`: the FastAPI app (routes, limits, authentication, error shapes);
- :mod:`serving.app`: the Serve deployment and ``build_app`` / ``app``.
"""
