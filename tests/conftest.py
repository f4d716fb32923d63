import torch

torch.set_num_threads(1)

# Session fixtures of the recogniser tests (espeak-ng corpus, tiny trained model, model folder).
pytest_plugins = ("tests.asr_fixtures",)
