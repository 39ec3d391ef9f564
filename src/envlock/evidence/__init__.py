"""What reads, judges and packs evidence: run statements and their verification, the trust store, bundles, reports."""
