//! The demo application server (issue 5): placeholder, owned by the demo work.
