export function App() {
  return <main><h1>Kairos admin</h1></main>;
}
