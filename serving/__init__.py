"""BERT QA on NVIDIA Triton Inference Server.

``serving.repository`` writes a model repository from an engine file, ``serving.serve`` runs
``tritonserver`` on it, ``serving.client`` asks questions (or answers a SQuAD file) through it and
``serving.load_test`` measures it.  ``engine_model`` and ``qa_model`` are the two Python-backend
models the server runs; they import ``triton_python_backend_utils``, which only exists there.
"""

# The served models' names: the repository writes them, the server waits for them, clients ask them.
ENGINE_MODEL = "bert_engine"
QA_MODEL = "bert_qa"
