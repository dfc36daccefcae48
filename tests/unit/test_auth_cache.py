"""The verified-app-password cache: successes only, bounded, expiring, no secrets held."""

from __future__ import annotations

from gateway.auth.cache import RecentSecrets

SECRET = "abcde-fghjk-mnpqr-stuvw"


def test_hit_within_ttl_then_miss_after_expiry():
    cache = RecentSecrets(ttl=600)
    cache.put("alice", SECRET, 7, now=1000.0)
    assert cache.get("alice", SECRET, now=1599.0) == 7
    assert cache.get("alice", SECRET, now=1600.0) is None
    assert len(cache) == 0


def test_a_different_secret_or_user_never_hits():
    cache = RecentSecrets()
    cache.put("alice", SECRET, 7, now=0.0)
    assert cache.get("alice", SECRET[:-1] + "x", now=1.0) is None
    assert cache.get("bob", SECRET, now=1.0) is None


def test_bounded_least_recently_used_goes_first():
    cache = RecentSecrets(max_entries=2)
    cache.put("a", SECRET, 1, now=0.0)
    cache.put("b", SECRET, 2, now=0.0)
    assert cache.get("a", SECRET, now=1.0) == 1  # a is now the most recent
    cache.put("c", SECRET, 3, now=2.0)
    assert len(cache) == 2
    assert cache.get("b", SECRET, now=3.0) is None
    assert cache.get("a", SECRET, now=3.0) == 1


def test_the_secret_is_not_kept_in_the_cache():
    cache = RecentSecrets()
    cache.put("alice", SECRET, 7, now=0.0)
    dump = repr(cache._entries) + repr(vars(cache))
    assert SECRET not in dump and SECRET.encode() not in dump.encode()
