//! The in-memory network behaves like the TCP one where tests depend on
//! it: delivery between endpoints, bounded inboxes, restarts.

mod support;

use dr_transport::{MemoryNetwork, Transport};
use support::heartbeat;

#[tokio::test]
async fn endpoints_exchange_messages_and_full_inboxes_drop() {
    let network = MemoryNetwork::new();
    let (one, mut inbox_one) = network.endpoint(1, 4);
    let (two, mut inbox_two) = network.endpoint(2, 4);
    assert!(one.send(heartbeat(1, 2, 1)));
    assert!(two.send(heartbeat(2, 1, 2)));
    assert_eq!(inbox_two.recv().await.unwrap().term, 1);
    assert_eq!(inbox_one.recv().await.unwrap().term, 2);
    for term in 0..4 {
        assert!(one.send(heartbeat(1, 2, term)));
    }
    assert!(!one.send(heartbeat(1, 2, 9)), "inbox bound");
    assert!(!one.send(heartbeat(1, 3, 1)), "unknown node");
    assert!(!one.send(heartbeat(2, 1, 1)), "not from this endpoint");
    assert_eq!(one.stats().messages_dropped, 3);
    network.disconnect(2);
    assert!(!one.send(heartbeat(1, 2, 1)));
    let (_restarted, mut inbox) = network.endpoint(2, 4);
    assert!(one.send(heartbeat(1, 2, 42)));
    assert_eq!(inbox.recv().await.unwrap().term, 42);
}
