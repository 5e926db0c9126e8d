"""secinfer: private transformer inference."""
