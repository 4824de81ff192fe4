"""Test-only builders: tiny artifacts in the real key and folder layouts of released files.

    tinyparts.py          tokenizers, tiny encoders, IP-Adapter weights, the TinyModel record (``charkit tiny-model``)
    ldm.py                diffusers -> original (LDM / A1111) single-file writer for SD1.5 and SDXL
    fake_insightface.py   a tiny insightface-format ONNX pack that runs through the real FaceAnalysis
    layouts.py            h94 IP-Adapter / FaceID repos, kohya LoRAs (SD1.5, SDXL), union ControlNets
    singlefile.py         BFL Flux and Stability SD3 single files (transformer only, or with encoders)
    check_copies.py       the `# Copied from` checker (tests/test_copies.py, make fix-copies)

The tests, the demo and ``charkit tiny-model`` build their models from these; nothing here is used
to render or score real work.
"""
