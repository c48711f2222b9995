"""The `tensorrt` backend, one module per concern: `backend` (the Backend: fast refit with the TensorRT
Refitter, fallback to torch_tensorrt), `archive` (reading the engines and the compile record out of a
torch.export archive without unpickling), `plan` (a value for every engine weight), `record` (what compile
records for that plan), `package` (writing refitted engines back into the archive) and `compile`
(`trtrefit compile` on a GPU). Nothing heavy is imported here."""
