"""`trtrefit serve`: an Open Inference Protocol v2 server whose engines are refitted live (InPlace)."""
