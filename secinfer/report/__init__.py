"""Run and evaluation reports: the common comparison with plaintext, each secure backend's
cost figures, the terminal tables, the plots and the atomic writing of result files."""
