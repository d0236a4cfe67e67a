// The browser SDK is not built yet.
