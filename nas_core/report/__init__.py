"""Table 1 and Figures 5-6 (paper sections 5.1-5.4): each network benchmarked, and the gathered report."""
