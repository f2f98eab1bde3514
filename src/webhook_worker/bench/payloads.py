"""The bodies the benchmark sends, shaped like real GitHub deliveries.

Each payload is a compact JSON template with one changing value of 40 hex digits (a push's
``after`` sha, which GitHub repeats as the newest commit's id and in its URL; the small one's
node id) that the load generator fills with fresh random digits per request, so every body and
every signature differs, as they would from a real sender. The rest is fixed and deterministic
(seeded), so runs compare. ``benchmarks/github-push.json`` is the default one, pretty-printed.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Final

UNIQUE_MARKER: Final = "@@unique@@"
"""Stands in the template for the per-request 40 hex digits."""
UNIQUE_LENGTH: Final = 40

_OWNER = "octo-org"
_REPO = "octo-service"
_API = "https://api.github.com"
_WEB = "https://github.com"


@dataclass(frozen=True, slots=True)
class Payload:
    name: str
    event_type: str
    """What GitHub would send in X-GitHub-Event."""
    parts: tuple[bytes, ...]
    """The template split at each place the changing field goes."""

    @property
    def size(self) -> int:
        return sum(map(len, self.parts)) + UNIQUE_LENGTH * (len(self.parts) - 1)

    def body(self, unique: bytes) -> bytes:
        """The body with ``unique`` (40 ASCII hex digits) in its changing field."""
        return unique.join(self.parts)


def _sha(rng: random.Random) -> str:
    return f"{rng.getrandbits(160):040x}"


_REPOSITORY_URLS: Final = (
    ("forks", "forks"),
    ("keys", "keys{/key_id}"),
    ("collaborators", "collaborators{/collaborator}"),
    ("teams", "teams"),
    ("hooks", "hooks"),
    ("issue_events", "issues/events{/number}"),
    ("events", "events"),
    ("assignees", "assignees{/user}"),
    ("branches", "branches{/branch}"),
    ("tags", "tags"),
    ("blobs", "git/blobs{/sha}"),
    ("git_tags", "git/tags{/sha}"),
    ("git_refs", "git/refs{/sha}"),
    ("trees", "git/trees{/sha}"),
    ("statuses", "statuses/{sha}"),
    ("languages", "languages"),
    ("stargazers", "stargazers"),
    ("contributors", "contributors"),
    ("subscribers", "subscribers"),
    ("subscription", "subscription"),
    ("commits", "commits{/sha}"),
    ("git_commits", "git/commits{/sha}"),
    ("comments", "comments{/number}"),
    ("issue_comment", "issues/comments{/number}"),
    ("contents", "contents/{+path}"),
    ("compare", "compare/{base}...{head}"),
    ("merges", "merges"),
    ("archive", "{archive_format}{/ref}"),
    ("downloads", "downloads"),
    ("issues", "issues{/number}"),
    ("pulls", "pulls{/number}"),
    ("milestones", "milestones{/number}"),
    ("notifications", "notifications{?since,all,participating}"),
    ("labels", "labels{/name}"),
    ("releases", "releases{/id}"),
    ("deployments", "deployments"),
)


def _user(login: str, user_id: int) -> dict[str, Any]:
    api = f"{_API}/users/{login}"
    return {
        "login": login,
        "id": user_id,
        "node_id": f"MDQ6VXNlcj{user_id:08d}",
        "avatar_url": f"https://avatars.githubusercontent.com/u/{user_id}?v=4",
        "gravatar_id": "",
        "url": api,
        "html_url": f"{_WEB}/{login}",
        "followers_url": f"{api}/followers",
        "following_url": f"{api}/following{{/other_user}}",
        "gists_url": f"{api}/gists{{/gist_id}}",
        "starred_url": f"{api}/starred{{/owner}}{{/repo}}",
        "subscriptions_url": f"{api}/subscriptions",
        "organizations_url": f"{api}/orgs",
        "repos_url": f"{api}/repos",
        "events_url": f"{api}/events{{/privacy}}",
        "received_events_url": f"{api}/received_events",
        "type": "User",
        "user_view_type": "public",
        "site_admin": False,
    }


def _repository() -> dict[str, Any]:
    api = f"{_API}/repos/{_OWNER}/{_REPO}"
    urls = {f"{key}_url": f"{api}/{path}" for key, path in _REPOSITORY_URLS}
    return {
        "id": 186853002,
        "node_id": "MDEwOlJlcG9zaXRvcnkxODY4NTMwMDI=",
        "name": _REPO,
        "full_name": f"{_OWNER}/{_REPO}",
        "private": True,
        "owner": {**_user(_OWNER, 6811672), "type": "Organization"},
        "html_url": f"{_WEB}/{_OWNER}/{_REPO}",
        "description": "The service that answers the octopus.",
        "fork": False,
        "url": api,
        **urls,
        "created_at": 1557933565,
        "updated_at": "2024-01-15T10:29:51Z",
        "pushed_at": 1705314591,
        "git_url": f"git://github.com/{_OWNER}/{_REPO}.git",
        "ssh_url": f"git@github.com:{_OWNER}/{_REPO}.git",
        "clone_url": f"{_WEB}/{_OWNER}/{_REPO}.git",
        "svn_url": f"{_WEB}/{_OWNER}/{_REPO}",
        "homepage": None,
        "size": 5918,
        "stargazers_count": 12,
        "watchers_count": 12,
        "language": "Python",
        "has_issues": True,
        "has_projects": True,
        "has_downloads": True,
        "has_wiki": False,
        "has_pages": False,
        "has_discussions": False,
        "forks_count": 3,
        "mirror_url": None,
        "archived": False,
        "disabled": False,
        "open_issues_count": 7,
        "license": None,
        "allow_forking": True,
        "is_template": False,
        "web_commit_signoff_required": False,
        "topics": ["webhooks", "automation"],
        "visibility": "private",
        "forks": 3,
        "open_issues": 7,
        "watchers": 12,
        "default_branch": "main",
        "stargazers": 12,
        "master_branch": "main",
        "organization": _OWNER,
        "custom_properties": {},
    }


def _commit(rng: random.Random, sha: str, files: int, message_lines: int) -> dict[str, Any]:
    paths = [
        f"src/{_REPO.replace('-', '_')}/module_{rng.randrange(1000):03d}.py" for _ in range(files)
    ]
    message = "\n".join(
        ["Handle retries in the consumer loop", ""][: 2 if message_lines else 1]
        + [
            f"- step {n}: keep the batch until the commit is acknowledged ({_sha(rng)[:12]})"
            for n in range(message_lines)
        ]
    )
    author = {"name": "Mona Octocat", "email": "mona@example.com", "username": "mona"}
    return {
        "id": sha,
        "tree_id": _sha(rng),
        "distinct": True,
        "message": message,
        "timestamp": "2024-01-15T10:29:48Z",
        "url": f"{_WEB}/{_OWNER}/{_REPO}/commit/{sha}",
        "author": author,
        "committer": {"name": "GitHub", "email": "noreply@github.com", "username": "web-flow"},
        "added": paths[: files // 3],
        "removed": [],
        "modified": paths[files // 3 :],
    }


def _push(seed: int, commits: int, files: int, message_lines: int) -> dict[str, Any]:
    rng = random.Random(seed)
    before = _sha(rng)
    shas = [_sha(rng) for _ in range(commits - 1)] + [UNIQUE_MARKER]
    listed = [_commit(rng, sha, files, message_lines) for sha in shas]
    # As GitHub sends it: "after" is the newest commit, repeated as head_commit.
    return {
        "ref": "refs/heads/main",
        "before": before,
        "after": UNIQUE_MARKER,
        "repository": _repository(),
        "pusher": {"name": "mona", "email": "mona@example.com"},
        "sender": _user("mona", 583231),
        "created": False,
        "deleted": False,
        "forced": False,
        "base_ref": None,
        "compare": f"{_WEB}/{_OWNER}/{_REPO}/compare/{before[:12]}...head",
        "commits": listed,
        "head_commit": listed[-1],
    }


def _small() -> dict[str, Any]:
    return {
        "action": "created",
        "starred_at": "2024-01-15T10:30:00Z",
        "repository": {
            "id": 186853002,
            "node_id": UNIQUE_MARKER,
            "full_name": "octo-org/app",
            "private": False,
        },
        "sender": {"login": "mona", "id": 583231, "type": "User", "site_admin": False},
        "installation": {"id": 42917338},
    }


def _template(name: str, event_type: str, document: dict[str, Any]) -> Payload:
    text = json.dumps(document, separators=(",", ":")).encode()
    return Payload(name, event_type, tuple(text.split(UNIQUE_MARKER.encode())))


def _build(name: str) -> Payload:
    if name == "small":
        return _template(name, "star", _small())
    if name == "github-push":
        return _template(name, "push", _push(seed=7, commits=1, files=2, message_lines=0))
    return _template(name, "push", _push(seed=64, commits=27, files=30, message_lines=8))


NAMES: Final = ("github-push", "small", "large")
"""``github-push`` (about 7 KB, the default), ``small`` (about 300 B), ``large`` (about 64 KB)."""


def payload(name: str) -> Payload:
    """The payload called ``name`` (one of :data:`NAMES`); ValueError for another name."""
    if name not in NAMES:
        raise ValueError(f"unknown payload {name!r} (known: {', '.join(NAMES)})")
    return _build(name)
