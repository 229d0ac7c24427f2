//! A linearizability checker for key-value histories, in the style of
//! Wing & Gong with the state cache of porcupine (Lowe's "just-in-time
//! linearizability"): the history is split by key, each key checked as a
//! single register.
//!
//! Each operation has a call time and a return time; a write whose outcome
//! the client never learned has no return (it may have taken effect at any
//! point after its call, or never). The search walks the history's call
//! and return events in time order and tries to place each pending call at
//! its linearization point; a return reached with its call not yet placed
//! means the order so far is wrong, so it backtracks. States already
//! explored (which operations are placed, and the register's value) are
//! cached, which makes the search practical for hundreds of operations.

use std::collections::{BTreeMap, HashSet};

/// What an operation did to its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RegisterOp {
    /// Wrote the value.
    Write(u64),
    /// Read the value (`None`: the key was absent).
    Read(Option<u64>),
}

/// One operation of a client history.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    /// The key.
    pub key: u64,
    /// What it did.
    pub op: RegisterOp,
    /// When it was called.
    pub call: u64,
    /// When it returned; `None` when the outcome is unknown (only writes).
    pub ret: Option<u64>,
}

/// The first key whose history is not linearizable, if any.
pub fn check(history: &[Operation]) -> Result<(), u64> {
    let mut by_key: BTreeMap<u64, Vec<Operation>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key).or_default().push(*op);
    }
    for (key, ops) in by_key {
        if !check_register(&ops) {
            return Err(key);
        }
    }
    Ok(())
}

const NIL: usize = usize::MAX;

#[derive(Clone, Copy)]
struct Event {
    op: usize,
    is_call: bool,
    prev: usize,
    next: usize,
    /// For a call, the index of its return event.
    partner: usize,
}

/// A sequential specification: what an operation does to the state, and
/// whether its observed output fits.
pub trait Model {
    /// The state of one object (one key).
    type State: Clone + Eq + std::hash::Hash;
    /// An operation with its observed output.
    type Op;
    /// The state before any operation.
    fn init() -> Self::State;
    /// The state after `op`, or `None` when its observed output is not
    /// what the specification gives in `state`.
    fn step(state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

/// An operation of a history for [`check_history`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timed<O> {
    /// The operation and its observed output.
    pub op: O,
    /// When it was called.
    pub call: u64,
    /// When it returned; `None` when the outcome is unknown (it may take
    /// effect at any time after its call, or never).
    pub ret: Option<u64>,
}

/// One register of `u64`s, starting absent.
struct Register;

impl Model for Register {
    type State = Option<u64>;
    type Op = RegisterOp;

    fn init() -> Option<u64> {
        None
    }

    fn step(state: &Option<u64>, op: &RegisterOp) -> Option<Option<u64>> {
        match *op {
            RegisterOp::Write(value) => Some(Some(value)),
            RegisterOp::Read(seen) => (seen == *state).then_some(*state),
        }
    }
}

/// Whether the history of one register (starting absent) is linearizable.
pub fn check_register(ops: &[Operation]) -> bool {
    let timed: Vec<Timed<RegisterOp>> = ops
        .iter()
        .map(|op| Timed {
            op: op.op,
            call: op.call,
            ret: op.ret,
        })
        .collect();
    check_history::<Register>(&timed)
}

/// Whether a history of one object is linearizable under model `M`.
pub fn check_history<M: Model>(ops: &[Timed<M::Op>]) -> bool {
    let mut timed: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, op) in ops.iter().enumerate() {
        // Calls sort before returns at the same instant: overlapping.
        timed.push((op.call, false, i));
        timed.push((op.ret.unwrap_or(u64::MAX), true, i));
    }
    timed.sort_unstable();
    // Event 0 is the list head; events 1.. follow in time order.
    let mut events = vec![Event {
        op: NIL,
        is_call: false,
        prev: NIL,
        next: NIL,
        partner: NIL,
    }];
    let mut return_of = vec![NIL; ops.len()];
    for &(_, is_return, op) in &timed {
        let id = events.len();
        events[id - 1].next = id;
        events.push(Event {
            op,
            is_call: !is_return,
            prev: id - 1,
            next: NIL,
            partner: NIL,
        });
        if is_return {
            return_of[op] = id;
        }
    }
    for event in events.iter_mut().skip(1).filter(|e| e.is_call) {
        event.partner = return_of[event.op];
    }
    search::<M>(ops, &mut events)
}

fn lift(events: &mut [Event], call: usize) {
    for id in [call, events[call].partner] {
        let Event { prev, next, .. } = events[id];
        events[prev].next = next;
        if next != NIL {
            events[next].prev = prev;
        }
    }
}

fn unlift(events: &mut [Event], call: usize) {
    for id in [events[call].partner, call] {
        let Event { prev, next, .. } = events[id];
        events[prev].next = id;
        if next != NIL {
            events[next].prev = id;
        }
    }
}

fn search<M: Model>(ops: &[Timed<M::Op>], events: &mut [Event]) -> bool {
    let mut placed = vec![0u64; ops.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, M::State)> = HashSet::new();
    let mut stack: Vec<(usize, M::State)> = Vec::new();
    let mut state = M::init();
    let mut cursor = events[0].next;
    while events[0].next != NIL {
        if cursor == NIL {
            return false;
        }
        let event = events[cursor];
        if event.is_call {
            if let Some(next_state) = M::step(&state, &ops[event.op].op) {
                placed[event.op / 64] |= 1 << (event.op % 64);
                if seen.insert((placed.clone(), next_state.clone())) {
                    let previous = std::mem::replace(&mut state, next_state);
                    stack.push((cursor, previous));
                    lift(events, cursor);
                    cursor = events[0].next;
                    continue;
                }
                placed[event.op / 64] &= !(1 << (event.op % 64));
            }
            cursor = event.next;
        } else {
            // A return whose call is not placed: undo the last placement.
            let Some((call, previous_state)) = stack.pop() else {
                return false;
            };
            state = previous_state;
            let op = events[call].op;
            placed[op / 64] &= !(1 << (op % 64));
            unlift(events, call);
            cursor = events[call].next;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use RegisterOp::*;

    fn op(op: RegisterOp, call: u64, ret: Option<u64>) -> Operation {
        Operation {
            key: 1,
            op,
            call,
            ret,
        }
    }

    #[test]
    fn sequential_histories() {
        assert!(check_register(&[]));
        assert!(check_register(&[op(Read(None), 0, Some(1))]));
        assert!(check_register(&[
            op(Write(1), 0, Some(1)),
            op(Read(Some(1)), 2, Some(3)),
            op(Write(2), 4, Some(5)),
            op(Read(Some(2)), 6, Some(7)),
        ]));
        assert!(!check_register(&[
            op(Write(1), 0, Some(1)),
            op(Read(None), 2, Some(3)),
        ]));
        assert!(!check_register(&[
            op(Write(1), 0, Some(1)),
            op(Write(2), 2, Some(3)),
            op(Read(Some(1)), 4, Some(5)),
        ]));
    }

    #[test]
    fn concurrent_operations_may_take_effect_in_either_order() {
        // Two overlapping writes; reads after both see one of them, and
        // then consistently.
        let writes = [op(Write(1), 0, Some(10)), op(Write(2), 1, Some(9))];
        for last in [1, 2] {
            let mut history = writes.to_vec();
            history.push(op(Read(Some(last)), 11, Some(12)));
            history.push(op(Read(Some(last)), 13, Some(14)));
            assert!(check_register(&history), "last {last}");
        }
        let mut flip_flop = writes.to_vec();
        flip_flop.push(op(Read(Some(1)), 11, Some(12)));
        flip_flop.push(op(Read(Some(2)), 13, Some(14)));
        assert!(!check_register(&flip_flop), "a value cannot come back");
        // A read overlapping a write may see the old or the new value.
        assert!(check_register(&[
            op(Write(1), 0, Some(1)),
            op(Write(2), 2, Some(6)),
            op(Read(Some(1)), 3, Some(4)),
            op(Read(Some(2)), 5, Some(7)),
        ]));
        // ... but not new then old.
        assert!(!check_register(&[
            op(Write(1), 0, Some(1)),
            op(Write(2), 2, Some(9)),
            op(Read(Some(2)), 3, Some(4)),
            op(Read(Some(1)), 5, Some(6)),
        ]));
    }

    #[test]
    fn writes_with_unknown_outcome_may_or_may_not_happen() {
        assert!(check_register(&[
            op(Write(1), 0, None),
            op(Read(None), 2, Some(3)),
        ]));
        assert!(check_register(&[
            op(Write(1), 0, None),
            op(Read(Some(1)), 2, Some(3)),
        ]));
        // Once seen, it happened.
        assert!(!check_register(&[
            op(Write(1), 0, None),
            op(Read(Some(1)), 2, Some(3)),
            op(Read(None), 4, Some(5)),
        ]));
        // It cannot take effect before it was called.
        assert!(!check_register(&[
            op(Read(Some(1)), 0, Some(1)),
            op(Write(1), 2, None),
        ]));
    }

    #[test]
    fn keys_are_checked_independently() {
        let history = [
            Operation {
                key: 1,
                op: Write(1),
                call: 0,
                ret: Some(1),
            },
            Operation {
                key: 2,
                op: Read(None),
                call: 2,
                ret: Some(3),
            },
            Operation {
                key: 1,
                op: Read(None),
                call: 4,
                ret: Some(5),
            },
        ];
        assert_eq!(check(&history), Err(1));
        assert_eq!(check(&history[..2]), Ok(()));
    }

    #[test]
    fn long_concurrent_histories_finish() {
        // 200 writes in overlapping pairs, each followed by a read.
        let mut history = Vec::new();
        for i in 0..100u64 {
            let t = i * 10;
            history.push(op(Write(2 * i), t, Some(t + 5)));
            history.push(op(Write(2 * i + 1), t + 1, Some(t + 6)));
            history.push(op(Read(Some(2 * i + 1)), t + 7, Some(t + 8)));
        }
        assert!(check_register(&history));
    }
}
