//! The Redis Lua scripts, embedded at compile time from `shared/lua/`.
//!
//! Each script's source is `common.lua` followed by its own file. Scripts run
//! by `EVALSHA`; [`load_all`] loads them with `SCRIPT LOAD` and checks that
//! Redis computed the same SHA1 as we did, so a proxy or server that rewrote
//! a script is caught at start, not by a wrong result later.

use redis::{Cmd, Script};
use std::sync::LazyLock;

macro_rules! lua {
    ($name:literal) => {
        concat!(
            include_str!("../lua/common.lua"),
            "\n-- ",
            $name,
            "\n",
            include_str!(concat!("../lua/", $name))
        )
    };
}

/// One embedded script.
#[derive(Debug)]
pub struct LuaScript {
    pub name: &'static str,
    pub source: &'static str,
    script: Script,
}

impl LuaScript {
    fn new(name: &'static str, source: &'static str) -> Self {
        Self {
            name,
            source,
            script: Script::new(source),
        }
    }

    /// The SHA1 that `EVALSHA` names the script by.
    pub fn sha(&self) -> &str {
        self.script.get_hash()
    }

    /// An `EVALSHA` command; the caller adds keys and arguments in the order
    /// the script's header documents, via [`Invocation`].
    pub fn invocation(&self) -> Invocation {
        Invocation {
            sha: self.sha().to_owned(),
            keys: Vec::new(),
            args: Vec::new(),
        }
    }
}

/// The keys and arguments of one script call, turned into `EVALSHA` by
/// [`Invocation::into_cmd`].
#[derive(Debug, Clone)]
pub struct Invocation {
    sha: String,
    keys: Vec<Vec<u8>>,
    args: Vec<Vec<u8>>,
}

impl Invocation {
    pub fn key(mut self, key: impl AsRef<[u8]>) -> Self {
        self.keys.push(key.as_ref().to_vec());
        self
    }

    pub fn arg(mut self, arg: impl redis::ToRedisArgs) -> Self {
        arg.write_redis_args(&mut self.args);
        self
    }

    pub fn into_cmd(self) -> Cmd {
        let mut cmd = redis::cmd("EVALSHA");
        cmd.arg(self.sha).arg(self.keys.len());
        for key in self.keys {
            cmd.arg(key);
        }
        for arg in self.args {
            cmd.arg(arg);
        }
        cmd
    }
}

pub static SUBMIT: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("submit.lua", lua!("submit.lua")));
pub static CLAIM: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("claim.lua", lua!("claim.lua")));
pub static COMPLETE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("complete.lua", lua!("complete.lua")));
pub static SPLIT: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("split.lua", lua!("split.lua")));
pub static CANCEL: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("cancel.lua", lua!("cancel.lua")));
pub static FIND: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("find.lua", lua!("find.lua")));
pub static EXTEND: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("extend.lua", lua!("extend.lua")));
pub static BURY: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("bury.lua", lua!("bury.lua")));
pub static REQUEUE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("requeue.lua", lua!("requeue.lua")));
pub static RELEASE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("release.lua", lua!("release.lua")));
pub static SCHEDULE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("schedule.lua", lua!("schedule.lua")));
pub static FIRE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("fire.lua", lua!("fire.lua")));
pub static PROMOTE: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("promote.lua", lua!("promote.lua")));
pub static FLOW: LazyLock<LuaScript> =
    LazyLock::new(|| LuaScript::new("flow.lua", lua!("flow.lua")));

/// Every script, for loading.
pub fn all() -> [&'static LuaScript; 14] {
    [
        &SUBMIT, &CLAIM, &COMPLETE, &SPLIT, &CANCEL, &FIND, &EXTEND, &BURY, &REQUEUE, &RELEASE,
        &SCHEDULE, &FIRE, &PROMOTE, &FLOW,
    ]
}

/// Why scripts could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ScriptError {
    #[error("loading script {name}: {source}")]
    Load {
        name: &'static str,
        source: redis::RedisError,
    },
    #[error(
        "Redis named script {name} {got}, expected {expected}: the script was altered in transit"
    )]
    ShaMismatch {
        name: &'static str,
        expected: String,
        got: String,
    },
}

/// Loads every script into Redis and verifies its SHA1.
pub async fn load_all<C: redis::aio::ConnectionLike>(conn: &mut C) -> Result<(), ScriptError> {
    for script in all() {
        let got: String = redis::cmd("SCRIPT")
            .arg("LOAD")
            .arg(script.source)
            .query_async(conn)
            .await
            .map_err(|source| ScriptError::Load {
                name: script.name,
                source,
            })?;
        if got != script.sha() {
            return Err(ScriptError::ShaMismatch {
                name: script.name,
                expected: script.sha().to_owned(),
                got,
            });
        }
    }
    Ok(())
}

/// True when a Redis error means the scripts are not loaded (a restarted or
/// flushed server), so loading them and retrying is the cure.
pub fn is_noscript(err: &redis::RedisError) -> bool {
    err.code() == Some("NOSCRIPT")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_script_has_a_distinct_sha() {
        let mut shas: Vec<_> = all().iter().map(|s| s.sha().to_owned()).collect();
        shas.sort();
        shas.dedup();
        assert_eq!(shas.len(), all().len());
        for script in all() {
            assert_eq!(Script::new(script.source).get_hash(), script.sha());
            assert!(script.source.contains("local function now_ms()"));
        }
    }
}
