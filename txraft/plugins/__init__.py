"""The real ``twistd`` plugin code; ``twisted/plugins/txraft_raftnode.py`` points here."""
