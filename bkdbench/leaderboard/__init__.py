"""The results layer: a Parquet leaderboard and the tables, comparisons and plots built on it.

Submodules are imported on demand (``bkdbench.leaderboard.store`` etc.) so that importing the
package stays cheap; none of them imports torch.
"""
