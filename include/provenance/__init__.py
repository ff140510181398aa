"""Provenance stage: Feast point-in-time retrieval, Great Expectations validation, provenance.json.

Import the submodules directly (``include.provenance.stage``, ``.feature_data``, ...); this
package module stays empty so that importing it does not pull in Feast or GX.
"""
