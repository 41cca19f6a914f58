"""Step *decode*: sources listed, clips decoded (or rejected with a reason), each within its deadline."""
