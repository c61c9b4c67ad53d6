"""The studio's shipped files, installed as the package ``studio.resources``.

pyproject.toml maps this folder into the studio package, so a wheel and an editable
install both carry it; ``studio.engine.demo_files`` reads it with ``importlib.resources``.
"""
