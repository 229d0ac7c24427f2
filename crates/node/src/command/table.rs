//! The commands drkv serves, as `COMMAND`, `COMMAND COUNT`, `COMMAND INFO`,
//! `COMMAND LIST` and `COMMAND DOCS` describe them to clients that probe:
//! Redis's arity convention (negative: at least), flags, key positions,
//! group and summary. A test checks the table against the parser, so it
//! lists exactly what is served.

use bytes::Bytes;

use crate::resp::Reply;

/// One command's description.
#[derive(Clone, Copy, Debug)]
pub struct CommandSpec {
    /// The name, in lower case.
    pub name: &'static str,
    /// Arguments with the name: exactly this many, or at least `-arity`.
    pub arity: i64,
    /// Whether it changes data.
    pub write: bool,
    /// The first key's position (0: none), the last (-1: the end), the
    /// step between keys.
    pub keys: (i64, i64, i64),
    /// Redis's command group.
    pub group: &'static str,
    /// One line on what it does.
    pub summary: &'static str,
}

const fn spec(
    name: &'static str,
    arity: i64,
    write: bool,
    keys: (i64, i64, i64),
    group: &'static str,
    summary: &'static str,
) -> CommandSpec {
    CommandSpec {
        name,
        arity,
        write,
        keys,
        group,
        summary,
    }
}

const NONE: (i64, i64, i64) = (0, 0, 0);
const ONE: (i64, i64, i64) = (1, 1, 1);
const ALL: (i64, i64, i64) = (1, -1, 1);
const PAIRS: (i64, i64, i64) = (1, -1, 2);
const TWO: (i64, i64, i64) = (1, 2, 1);

/// Every command served.
#[rustfmt::skip]
pub const COMMANDS: &[CommandSpec] = &[
    spec("ping", -1, false, NONE, "connection", "Returns the server's liveliness response."),
    spec("echo", 2, false, NONE, "connection", "Returns the given string."),
    spec("hello", -1, false, NONE, "connection", "Handshakes with the server."),
    spec("auth", -2, false, NONE, "connection", "Authenticates the connection."),
    spec("acl", -2, false, NONE, "server", "ACL WHOAMI, ACL LIST, ACL USERS."),
    spec("client", -2, false, NONE, "connection", "CLIENT ID, GETNAME, SETNAME, LIST, SETINFO."),
    spec("command", -1, false, NONE, "server", "Describes the commands served."),
    spec("select", 2, false, NONE, "connection", "Selects database 0, the only one."),
    spec("quit", -1, false, NONE, "connection", "Closes the connection."),
    spec("info", -1, false, NONE, "server", "Returns the node's state."),
    spec("time", 1, false, NONE, "server", "Returns the node's clock."),
    spec("multi", 1, false, NONE, "transactions", "Starts a transaction."),
    spec("exec", 1, false, NONE, "transactions", "Runs the queued commands as one log entry."),
    spec("discard", 1, false, NONE, "transactions", "Drops the queued commands."),
    spec("watch", -2, false, ALL, "transactions", "Makes EXEC fail if the keys change first."),
    spec("unwatch", 1, false, NONE, "transactions", "Forgets the watched keys."),
    spec("get", 2, false, ONE, "string", "Returns a string's value."),
    spec("mget", -2, false, ALL, "string", "Returns the values of several keys."),
    spec("strlen", 2, false, ONE, "string", "Returns a string's length."),
    spec("getrange", 4, false, ONE, "string", "Returns a substring."),
    spec("substr", 4, false, ONE, "string", "Returns a substring (GETRANGE)."),
    spec("set", -3, true, ONE, "string", "Sets a string, with options for condition and expiry."),
    spec("setnx", 3, true, ONE, "string", "Sets a string if the key does not exist."),
    spec("getset", 3, true, ONE, "string", "Sets a string and returns the old value."),
    spec("setex", 4, true, ONE, "string", "Sets a string with a time to live in seconds."),
    spec("psetex", 4, true, ONE, "string", "Sets a string with a time to live in milliseconds."),
    spec("getex", -2, true, ONE, "string", "Returns a string and sets or clears its expiry."),
    spec("getdel", 2, true, ONE, "string", "Returns a string and deletes the key."),
    spec("setrange", 4, true, ONE, "string", "Overwrites part of a string."),
    spec("append", 3, true, ONE, "string", "Appends to a string."),
    spec("incr", 2, true, ONE, "string", "Adds one to an integer."),
    spec("decr", 2, true, ONE, "string", "Subtracts one from an integer."),
    spec("incrby", 3, true, ONE, "string", "Adds to an integer."),
    spec("decrby", 3, true, ONE, "string", "Subtracts from an integer."),
    spec("incrbyfloat", 3, true, ONE, "string", "Adds to a floating point number."),
    spec("mset", -3, true, PAIRS, "string", "Sets several strings atomically."),
    spec("msetnx", -3, true, PAIRS, "string", "Sets several strings if none of the keys exists."),
    spec("cas", 4, true, ONE, "string", "drkv: sets a string if it holds the expected value."),
    spec("del", -2, true, ALL, "generic", "Deletes keys."),
    spec("unlink", -2, true, ALL, "generic", "Deletes keys."),
    spec("exists", -2, false, ALL, "generic", "Counts the keys that exist."),
    spec("touch", -2, false, ALL, "generic", "Counts the keys that exist."),
    spec("type", 2, false, ONE, "generic", "Returns a key's type."),
    spec("expire", -3, true, ONE, "generic", "Sets a key's time to live in seconds."),
    spec("pexpire", -3, true, ONE, "generic", "Sets a key's time to live in milliseconds."),
    spec("expireat", -3, true, ONE, "generic", "Sets a key's expiry as a Unix time in seconds."),
    spec("pexpireat", -3, true, ONE, "generic", "Sets a key's expiry as a Unix time in ms."),
    spec("persist", 2, true, ONE, "generic", "Removes a key's expiry."),
    spec("ttl", 2, false, ONE, "generic", "Returns a key's time to live in seconds."),
    spec("pttl", 2, false, ONE, "generic", "Returns a key's time to live in milliseconds."),
    spec("expiretime", 2, false, ONE, "generic", "Returns a key's expiry as a Unix time in seconds."),
    spec("pexpiretime", 2, false, ONE, "generic", "Returns a key's expiry as a Unix time in ms."),
    spec("rename", 3, true, TWO, "generic", "Renames a key."),
    spec("renamenx", 3, true, TWO, "generic", "Renames a key if the new name is free."),
    spec("copy", -3, true, TWO, "generic", "Copies a key."),
    spec("keys", 2, false, NONE, "generic", "Returns the keys matching a pattern (bounded)."),
    spec("scan", -2, false, NONE, "generic", "Iterates over the keys."),
    spec("randomkey", 1, false, NONE, "generic", "Returns a random key."),
    spec("dbsize", 1, false, NONE, "server", "Returns the number of keys."),
    spec("flushdb", -1, true, NONE, "server", "Removes every key."),
    spec("flushall", -1, true, NONE, "server", "Removes every key."),
    spec("hset", -4, true, ONE, "hash", "Sets hash fields."),
    spec("hmset", -4, true, ONE, "hash", "Sets hash fields."),
    spec("hsetnx", 4, true, ONE, "hash", "Sets a hash field if it does not exist."),
    spec("hdel", -3, true, ONE, "hash", "Deletes hash fields."),
    spec("hincrby", 4, true, ONE, "hash", "Adds to an integer hash field."),
    spec("hincrbyfloat", 4, true, ONE, "hash", "Adds to a floating point hash field."),
    spec("hget", 3, false, ONE, "hash", "Returns a hash field's value."),
    spec("hmget", -3, false, ONE, "hash", "Returns several hash fields' values."),
    spec("hlen", 2, false, ONE, "hash", "Returns the number of fields."),
    spec("hexists", 3, false, ONE, "hash", "Says whether a field exists."),
    spec("hstrlen", 3, false, ONE, "hash", "Returns a field value's length."),
    spec("hgetall", 2, false, ONE, "hash", "Returns every field and value."),
    spec("hkeys", 2, false, ONE, "hash", "Returns every field."),
    spec("hvals", 2, false, ONE, "hash", "Returns every value."),
    spec("hscan", -3, false, ONE, "hash", "Iterates over a hash's fields."),
];

/// The description of `name` (any case).
pub fn find(name: &[u8]) -> Option<&'static CommandSpec> {
    COMMANDS
        .iter()
        .find(|spec| name.eq_ignore_ascii_case(spec.name.as_bytes()))
}

fn info(spec: &CommandSpec) -> Reply {
    let mut flags = vec![Reply::Simple(if spec.write { "write" } else { "readonly" })];
    if spec.group == "connection" {
        flags = vec![Reply::Simple("fast")];
    }
    let category = |group: &str| Reply::Bulk(Bytes::from(format!("@{group}")));
    Reply::Array(vec![
        Reply::bulk(spec.name),
        Reply::Integer(spec.arity),
        Reply::Array(flags),
        Reply::Integer(spec.keys.0),
        Reply::Integer(spec.keys.1),
        Reply::Integer(spec.keys.2),
        Reply::Array(vec![
            category(spec.group),
            category(if spec.write { "write" } else { "read" }),
        ]),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
        Reply::Array(Vec::new()),
    ])
}

fn docs(spec: &CommandSpec) -> Reply {
    Reply::Array(vec![
        Reply::bulk("summary"),
        Reply::bulk(spec.summary),
        Reply::bulk("since"),
        Reply::bulk(env!("CARGO_PKG_VERSION")),
        Reply::bulk("group"),
        Reply::bulk(spec.group),
    ])
}

/// The reply to `COMMAND [subcommand [argument...]]`.
pub fn reply(args: &[Bytes]) -> Reply {
    let Some(sub) = args.first() else {
        return Reply::Array(COMMANDS.iter().map(info).collect());
    };
    let rest = &args[1..];
    match sub.to_ascii_uppercase().as_slice() {
        b"COUNT" if rest.is_empty() => Reply::Integer(COMMANDS.len() as i64),
        b"LIST" if rest.is_empty() => {
            Reply::Array(COMMANDS.iter().map(|spec| Reply::bulk(spec.name)).collect())
        }
        b"INFO" => {
            let items = if rest.is_empty() {
                COMMANDS.iter().map(info).collect()
            } else {
                rest.iter()
                    .map(|name| find(name).map_or(Reply::Null, info))
                    .collect()
            };
            Reply::Array(items)
        }
        b"DOCS" => {
            let chosen: Vec<&CommandSpec> = if rest.is_empty() {
                COMMANDS.iter().collect()
            } else {
                rest.iter().filter_map(|name| find(name)).collect()
            };
            Reply::Array(
                chosen
                    .into_iter()
                    .flat_map(|spec| [Reply::bulk(spec.name), docs(spec)])
                    .collect(),
            )
        }
        _ => Reply::err(format!(
            "unknown subcommand or wrong number of arguments for '{}'. Try COMMAND HELP.",
            String::from_utf8_lossy(&sub[..sub.len().min(64)])
        )),
    }
}
