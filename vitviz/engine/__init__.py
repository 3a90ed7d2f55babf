"""The torch side: one forward pass captures attention, gradients, embeddings, anatomy, the live
stream."""
