//! Leases: a worker keeps the entries it runs by extending their leases
//! (`extend.lua`, in every round trip), and hands back the ones it will not
//! finish when it stops or its device fails (`release.lua`).

use redis::Cmd;

use super::reply::{int, reply_ok};
use super::{Store, StoreError, StreamRef};
use crate::keys::GROUP;
use crate::scripts;

impl Store {
    pub(super) fn extend_cmd(
        &self,
        streams: &[StreamRef],
        consumer: &str,
        held: &[(usize, String)],
    ) -> Cmd {
        let mut call = scripts::EXTEND.invocation(self.events);
        for stream in streams {
            call = call.key(&stream.key);
        }
        call = call.arg(GROUP).arg(consumer);
        for (index, entry_id) in held {
            call = call.arg(index + 1).arg(entry_id.as_str());
        }
        call.into_cmd()
    }

    /// Hands a stopping worker's unfinished entries back to their streams,
    /// as new entries another worker starts at once. Returns how many.
    /// `device_failure` (an error code and message) says the worker's
    /// device failed: each entry's `interrupted` count goes up and the
    /// task's history notes why.
    pub async fn release(
        &self,
        streams: &[StreamRef],
        consumer: &str,
        held: &[(usize, String)],
        device_failure: Option<(&str, &str)>,
    ) -> Result<u64, StoreError> {
        let (why, message) = device_failure.unwrap_or(("shutdown", ""));
        let mut cmds = Vec::new();
        for members in self.stream_groups(streams) {
            let held = local_held(&members, held);
            if held.is_empty() {
                continue;
            }
            let mut call = scripts::RELEASE.invocation(self.events);
            for &i in &members {
                call = call.key(&streams[i].key);
            }
            call = call.arg(GROUP).arg(consumer).arg(why).arg(message);
            for (index, entry_id) in &held {
                call = call.arg(index + 1).arg(entry_id.as_str());
            }
            cmds.push(call.into_cmd());
        }
        let mut released = 0;
        for reply in self.pipeline(&cmds).await? {
            released += u64::try_from(int(reply_ok(reply)?, "release")?).unwrap_or(0);
        }
        Ok(released)
    }
}

/// `held` (positions in the worker's streams, entry ids) narrowed to the
/// streams `members` names, with positions in `members`.
pub(super) fn local_held(members: &[usize], held: &[(usize, String)]) -> Vec<(usize, String)> {
    held.iter()
        .filter_map(|(index, id)| {
            let local = members.iter().position(|m| m == index)?;
            Some((local, id.clone()))
        })
        .collect()
}
