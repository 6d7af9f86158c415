//! The dead-letter streams: one per class (`tandem:{<class>}:dead`), each
//! entry a task's original fields plus why it died.

use redis::{Cmd, Value};

use super::reply::{array, fields, int, reply_ok, stream_entries, text};
use super::{Store, StoreError};
use crate::scripts;
use crate::task::{Class, TaskId};
use crate::wire::Fields;

/// At most this many dead letters are deleted by one script call.
const PURGE_PAGE: usize = 500;

/// One dead letter.
#[derive(Debug, Clone, PartialEq)]
pub struct DeadLetter {
    /// Its id in the dead-letter stream.
    pub id: String,
    pub class: Class,
    /// The task's id, when the entry had a readable one.
    pub task_id: Option<TaskId>,
    pub kind: Option<String>,
    /// The error code that ended it.
    pub reason: String,
    pub message: String,
    pub attempts: u32,
    pub dead_at_ms: u64,
    /// The attempt history, as JSON.
    pub history: String,
    /// Every field: the original entry's and the ones above.
    pub fields: Fields,
}

impl DeadLetter {
    fn from_entry(class: Class, id: String, fields: Fields) -> Self {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name.as_bytes())
                .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        };
        DeadLetter {
            task_id: get("id").and_then(|t| t.parse().ok()),
            kind: get("kind"),
            reason: get("reason").unwrap_or_default(),
            message: get("error_message").unwrap_or_default(),
            attempts: get("attempts").and_then(|a| a.parse().ok()).unwrap_or(0),
            dead_at_ms: get("dead_at_ms").and_then(|a| a.parse().ok()).unwrap_or(0),
            history: get("history").unwrap_or_else(|| "[]".into()),
            id,
            class,
            fields,
        }
    }
}

impl Store {
    /// Dead letters per class, newest first, at most `count` per class.
    pub async fn dead_letters(
        &self,
        classes: &[Class],
        count: usize,
    ) -> Result<Vec<DeadLetter>, StoreError> {
        let cmds: Vec<Cmd> = classes
            .iter()
            .map(|&class| {
                let mut cmd = redis::cmd("XREVRANGE");
                cmd.arg(self.keys.dead(class))
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(count);
                cmd
            })
            .collect();
        let mut letters = Vec::new();
        for (&class, reply) in classes.iter().zip(self.pipeline(&cmds).await?) {
            for entry in array(reply_ok(reply)?, "XREVRANGE")? {
                let mut parts = array(entry, "XREVRANGE")?.into_iter();
                let id = text(parts.next().unwrap_or(Value::Nil), "XREVRANGE")?;
                let fields = fields(parts.next().unwrap_or(Value::Nil), "XREVRANGE")?;
                letters.push(DeadLetter::from_entry(class, id, fields));
            }
        }
        Ok(letters)
    }

    /// One dead letter by its id, in whichever class holds it.
    pub async fn dead_letter(&self, id: &str) -> Result<Option<DeadLetter>, StoreError> {
        let cmds: Vec<Cmd> = Class::ALL
            .iter()
            .map(|&class| {
                let mut cmd = redis::cmd("XRANGE");
                cmd.arg(self.keys.dead(class)).arg(id).arg(id);
                cmd
            })
            .collect();
        for (&class, reply) in Class::ALL.iter().zip(self.pipeline(&cmds).await?) {
            // An id that is not a stream id is an error here: none found.
            let Ok(reply) = reply_ok(reply) else {
                return Ok(None);
            };
            if let Some(entry) = array(reply, "XRANGE")?.into_iter().next() {
                let mut parts = array(entry, "XRANGE")?.into_iter();
                let id = text(parts.next().unwrap_or(Value::Nil), "XRANGE")?;
                let fields = fields(parts.next().unwrap_or(Value::Nil), "XRANGE")?;
                return Ok(Some(DeadLetter::from_entry(class, id, fields)));
            }
        }
        Ok(None)
    }

    /// Puts a dead letter back into its stream as a fresh first attempt.
    /// Returns the task id (when it had one) and the new entry id, or `None`
    /// when there is no such dead letter.
    pub async fn requeue_dead(
        &self,
        class: Class,
        id: &str,
    ) -> Result<Option<(Option<TaskId>, String)>, StoreError> {
        let cmd = scripts::REQUEUE
            .invocation(self.events)
            .key(self.keys.dead(class))
            .arg(id)
            .into_cmd();
        let mut parts = array(self.single(cmd).await?, "requeue")?.into_iter();
        let Some(task) = parts.next() else {
            return Ok(None);
        };
        let task = text(task, "requeue")?;
        let entry = text(parts.next().unwrap_or(Value::Nil), "requeue")?;
        Ok(Some((task.parse().ok(), entry)))
    }

    /// Deletes the given dead letters of a class, or all of them (those
    /// there when the call starts; later ones stay), giving back the
    /// parameter blob reference each held (`dead_purge.lua`, at most
    /// [`PURGE_PAGE`] entries a call, so a long stream does not hold Redis
    /// up).
    pub async fn purge_dead(
        &self,
        class: Class,
        ids: Option<&[String]>,
    ) -> Result<u64, StoreError> {
        let key = self.keys.dead(class);
        let mut deleted = 0;
        match ids {
            Some(ids) => {
                for page in ids.chunks(PURGE_PAGE) {
                    deleted += self.purge_call(key, "ids", page).await?;
                }
            }
            None => {
                let mut last = redis::cmd("XREVRANGE");
                last.arg(key).arg("+").arg("-").arg("COUNT").arg(1);
                let Some((newest, _)) = stream_entries(self.single(last).await?)?.pop() else {
                    return Ok(0);
                };
                loop {
                    let page = PURGE_PAGE.to_string();
                    let purged = self
                        .purge_call(key, "upto", &[newest.clone(), page])
                        .await?;
                    deleted += purged;
                    if purged < PURGE_PAGE as u64 {
                        break;
                    }
                }
            }
        }
        Ok(deleted)
    }

    async fn purge_call(&self, key: &str, mode: &str, args: &[String]) -> Result<u64, StoreError> {
        let cmd = scripts::DEAD_PURGE
            .invocation(self.events)
            .key(key)
            .arg(mode)
            .arg(args)
            .into_cmd();
        Ok(u64::try_from(int(self.single(cmd).await?, "dead_purge")?).unwrap_or(0))
    }
}
