"""What runs in the refit Job: fetch artifacts, check the checkpoint against the engine, refit, verify
against PyTorch, publish. Imports only `trtrefit.api` of ours; torch and TensorRT are imported lazily."""
