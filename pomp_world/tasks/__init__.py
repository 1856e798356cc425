"""The main job's three tasks on the world, one module each: zero-shot classification,
Detic-style detection (pomp_det) and ZSSeg-style segmentation (pomp_seg). Each takes a prompt
(a POMP prompt file, or the task's hand-crafted words) and returns its metrics."""
